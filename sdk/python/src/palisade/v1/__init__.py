"""Palisade API v1, generated from proto/palisade/v1/*.proto by sdk/python/scripts/generate.sh.

Do not edit: every file in this package is regenerated. Import the modules directly, e.g.
`from palisade.v1 import policy_pb2, policy_pb2_grpc`.
"""
