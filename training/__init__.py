"""Training pipeline: teach the model to use clicks (paper's simulated HITL + uncertainty-weighted loss).

Modules
    data         training sources → samples (folders, exported manifest, NIfTI slices, CXR-LT CSV), split by patient,
                 bad input counted in a SkipLog (or an error with ``strict``)
    cache        float16 frozen-encoder embeddings per image content hash (the predictor's disk-cache layout), h-flip
                 computed once too; model-grid targets (connected components + whole mask, with text phrases)
    clicks       deepest point / RITM deepest-error click / uniform click from E = M ⊕ Y
    losses       Eq. 6–10 terms (LossConfig: detach / normalise options, top-k, click sampling)
    engine       SegStep: one step's forward (first pass + HITL rounds) as an nn.Module (what DDP wraps)
    trainer      SegTrainer: prompt modes (click / box / text) × phases (new / remembered click sequence), AdamW,
                 warm-up + cosine, DDP, resume, outputs in runs/<name>/
    classify     CXR-LT multi-label heads with a logit-adjusted (or ASL) masked loss
    lora         peft LoRA (r 8, α 16) on the TinyViT encoder, merged for saving
    cli          ``python launch.py train``
    eval_clicks  ``python launch.py eval-clicks`` (RITM protocol, JSON)
"""
