"""Generated gRPC code for tokenweight.v1 (from protos/tokenweight/v1/scorer.proto)."""
