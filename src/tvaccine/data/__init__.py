"""Data: templates, tokenization, and reading instruction files."""

from tvaccine.data.files import load_instruction_file
from tvaccine.data.template import format_prompt
from tvaccine.data.tokenize import CausalCollator, encode_rows

__all__ = ["CausalCollator", "encode_rows", "format_prompt", "load_instruction_file"]
