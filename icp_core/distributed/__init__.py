"""Scale-out: the pipeline's stages on a Ray cluster (`icp run --engine ray`).

`partition.py` holds the pure array functions the distributed ordering needs (grouping IVF lists
into partitions, cutting their paths into fragments, stitching those across partitions).
`ray_engine.py` runs the stages in the local pipeline's order, one module per stage
(`ray_ingest`, `ray_embed`, `ray_knn`, `ray_dedup`, `ray_order`, `ray_pack`) plus `ray_util`;
each calls the local engine's pure functions on its shards. Only the `ray_*` modules import
Ray, and nothing imports them unless asked to.
"""
