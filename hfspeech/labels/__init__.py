"""HuBERT labels (the papers' targets): MFCC / layer features, k-means, streaming label assignment, cluster quality.

The data path: `compute_mfcc_batch` (iteration 1, 100 Hz) or `LayerFeatureReader` (later
iterations, 50 Hz) -> `FrameSampler` + `fit_kmeans` (torch or sklearn backend) ->
`write_label_files` (streaming, ``.km`` files + ``labels.json``), or
`fit_and_assign` for both with features computed once (cached under a memory bound) ->
`measure_quality` (PNMI, phone/cluster purity against phone alignments).

Utterances travel in groups of ~200 s of audio (`feature_groups`); on the CPU the MFCC
groups are computed and labelled on one worker thread per core (`parallel`), results in
stream order, so the outputs do not depend on the thread count.
"""

from .assign import (
    LabelMetadata,
    check_label_length,
    iter_labels,
    read_km_file,
    read_label_directory,
    write_label_files,
    write_label_groups,
)
from .deltas import compute_deltas
from .feature_groups import iter_source_utterances, make_frame_features, sample_fit_frames
from .fit_assign import FeatureCache, fit_and_assign
from .iterations import assign_label_sets, check_label_rate, fit_label_sets, run_iterations, verify_labels
from .kmeans import FrameSampler, KMeansModel, compute_inertia, fit_kmeans, load_kmeans_models
from .layer_features import LayerFeatureReader, load_feature_model, num_conv_frames
from .mfcc import MFCCConfig, MFCCFrameFeatures, compute_mfcc, compute_mfcc_batch, num_mfcc_frames
from .quality import (
    DEFAULT_MAX_UNCOVERED_SECONDS,
    FrameAlignment,
    QualityReport,
    align_frames,
    measure_quality,
    plot_co_occurrence,
    quality_from_counts,
    read_frame_tsv,
    read_phn_directory,
    read_phn_file,
)

__all__ = [
    "DEFAULT_MAX_UNCOVERED_SECONDS", "FeatureCache", "FrameAlignment", "FrameSampler", "KMeansModel", "LabelMetadata", "LayerFeatureReader", "MFCCConfig",
    "MFCCFrameFeatures", "QualityReport", "align_frames", "assign_label_sets", "check_label_length", "check_label_rate",
    "compute_deltas", "compute_inertia", "compute_mfcc", "compute_mfcc_batch", "fit_and_assign", "fit_kmeans",
    "fit_label_sets",
    "iter_labels", "iter_source_utterances", "load_feature_model", "load_kmeans_models", "make_frame_features",
    "measure_quality", "num_conv_frames", "num_mfcc_frames", "plot_co_occurrence", "quality_from_counts",
    "read_frame_tsv", "read_km_file", "read_label_directory", "read_phn_directory", "read_phn_file",
    "run_iterations", "sample_fit_frames", "verify_labels", "write_label_files", "write_label_groups",
]
