"""Stage adapters: read the workspace in bulk, call the pure stage function, write one table.

One module per stage (`ingest`, `embed`, `knn`, `dedup`, `order`, `pack`, `metrics`,
`layout`); each `run_<stage>(ws, params, report)` returns its counts (named where the decision
is made), and the module also holds the readers of the table it writes (`read_vectors`,
`read_neighbors`, `read_packing`, ...). `pipeline.STAGES` declares the parameters each stage
reads; where a parameter's effective value differs from how it is spelled (a model folder's
content, `auto` index), a `<stage>_resolve(ws, values)` turns the read values into that value.
`pipeline.py` decides when to run them.

Callers use this package's names (`stages.run_knn`, `stages.read_vectors`); pure functions
are called from their core modules (`traverse.restrict_graph`, `dedup.near_copy_filter`, ...).
"""

from icp_core.stages._report import Report, _noop
from icp_core.stages.dedup import kept_documents, run_dedup
from icp_core.stages.embed import (
    embed_resolve,
    export_embedding_cache,
    read_vectors,
    run_embed,
    seed_embedding_cache,
)
from icp_core.stages.ingest import (
    ingest_fingerprint_source,
    no_documents_message,
    run_ingest,
)
from icp_core.stages.knn import (
    KNN_MIN_STORED,
    knn_covers,
    knn_records,
    knn_resolve,
    read_neighbors,
    run_knn,
)
from icp_core.stages.layout import (
    export_layout_cache,
    graph_key,
    layout_resolve,
    run_layout,
    seed_layout_cache,
)
from icp_core.stages.metrics import (
    compute_metrics,
    latest_metrics,
    random_packing,
    read_labels,
    report_parameters,
    resolve_label_field,
    run_metrics,
)
from icp_core.stages.order import run_order
from icp_core.stages.pack import (
    document_tokens,
    lm_tokenizer,
    pack_records,
    pack_resolve,
    packed_document_tokens,
    read_packing,
    run_pack,
    separator_for,
)

__all__ = [
    "KNN_MIN_STORED",
    "Report",
    "_noop",
    "compute_metrics",
    "document_tokens",
    "embed_resolve",
    "export_embedding_cache",
    "ingest_fingerprint_source",
    "kept_documents",
    "knn_covers",
    "knn_records",
    "knn_resolve",
    "latest_metrics",
    "export_layout_cache",
    "graph_key",
    "layout_resolve",
    "lm_tokenizer",
    "no_documents_message",
    "pack_records",
    "pack_resolve",
    "packed_document_tokens",
    "random_packing",
    "read_labels",
    "read_neighbors",
    "read_packing",
    "read_vectors",
    "report_parameters",
    "resolve_label_field",
    "run_dedup",
    "run_embed",
    "run_ingest",
    "run_knn",
    "run_layout",
    "seed_layout_cache",
    "run_metrics",
    "run_order",
    "run_pack",
    "seed_embedding_cache",
    "separator_for",
]
