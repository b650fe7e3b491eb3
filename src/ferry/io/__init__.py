"""Byte-level readers and writers: safetensors, torch zip pickles, file ranges."""
