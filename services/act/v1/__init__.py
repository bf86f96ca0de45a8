"""Generated code: made from protos/act/v1 by protos/generate.py; do not edit."""
