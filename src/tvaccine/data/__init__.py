"""Data: sources and their formats, templates, tokenization, and the sets of the threat model."""

from tvaccine.data.sources import load_instruction_file, load_source
from tvaccine.data.template import format_prompt
from tvaccine.data.tokenize import CausalCollator, encode_rows

__all__ = ["CausalCollator", "encode_rows", "format_prompt", "load_instruction_file", "load_source"]
