"""comfyui-indigo core: LatentINDIGO's invertible networks, degradation estimator and guidance.

Host-agnostic: nothing here imports ComfyUI.
"""
