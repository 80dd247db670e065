"""Generated protobuf code: never edit by hand; regenerate with scripts/gen_proto.py."""
