"""Caffe layer types: the registry (registry.py), the graph builder (graph.py) and one module per family."""
