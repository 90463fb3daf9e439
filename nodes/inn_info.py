"""INN Info: shows what an INDIGO_INN is (domain, scale, size) and outputs it as text."""

from __future__ import annotations

from .common import CATEGORY, INN, format_inn_summary, inn_summary
from .host import io


class INNInfo(io.ComfyNode):
    """An output node: wiring Load INN into it is the smallest graph that loads an INN."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="INDIGO_INNInfo",
            display_name="INN Info",
            category=CATEGORY,
            description=(
                "Shows an INN's domain (pixel or latent), scale factor, wavelet split, levels, "
                "lifting pairs and parameter count, and outputs the same text."
            ),
            inputs=[
                INN.Input(
                    "inn",
                    tooltip="An INN from Load INN (or from a node that adapts one). It is only read.",
                ),
            ],
            outputs=[
                io.String.Output(
                    "summary",
                    display_name="summary",
                    tooltip="The text shown on the node, e.g. to feed a note or a file.",
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, inn) -> io.NodeOutput:
        info = inn_summary(inn)
        text = format_inn_summary(info)
        return io.NodeOutput(text, ui={"text": [text], "indigo_inn": [info]})
