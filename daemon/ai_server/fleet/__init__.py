"""Several machines behind one front: what each node has (nodes.py, pure but discovery) and
the routing kept current in HAProxy's runtime (fleet.py)."""
