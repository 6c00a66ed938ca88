"""The edge: routes, the answering pipeline they share, streaming, errors and observability."""
