"""Scale-out: the pipeline's stages on a Ray cluster (`icp run --engine ray`).

`partition.py` holds the pure array functions the distributed ordering needs (grouping IVF lists
into partitions, cutting their paths into fragments, stitching those across partitions);
`ray_engine.py` runs the stages as Ray tasks and actors. Only `ray_engine` imports Ray, and
nothing imports it unless asked to.
"""
