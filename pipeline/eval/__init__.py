"""Accuracy: the one evaluation path every model and runtime is scored through.

    datasets   benchmarks (LFW, CFP, .bin, IJB-B/C): resolve a spec, load its faces and pairs, score embeddings
    metrics    10-fold verification accuracy, VAL@FAR, TAR@FAR, ROC, the IJB 1:1 template protocol
    evaluate   evaluate_model (resolve, load, embed with the cache, measure), result tables and ROC curves
    cache      content-keyed embedding cache (teacher training-set embeddings and benchmark embeddings)
"""
