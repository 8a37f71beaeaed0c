"""Distributed training on Ray Train (V2) fed by Ray Data, one job per module:

    split        the hash hold-out (plain Python)
    plan         driver: shard descriptors, counts, the hold-out rule
    data         Ray Data: shard -> rows, the CPU transforms, the datasets and their ingest split
    loop         the steps (train_one_epoch, evaluate) and the worker loop in named steps
    checkpoints  CheckpointStore: save, restore, export
    records      metrics.jsonl, curves.png, the progress line
    driver       fit in named steps (import this one to train)

Training takes the inputs of `raycolor colorize` through its reading path, and the driver holds shard
descriptors only, never a per-image list:

    inputs ─classify, list folders in tasks, size manifests/tars (planning.shard_inputs)─▶ shard descriptors
    one task per shard: expand, count, hash (no image read) ─▶ totals + the hold-out rule (= split_items)
    shards ─Ray Data: expand (as colorize), keep this side's rows ───┬─ train: read + decode (inputs.read_decoded),
                                                                     │  random-resized crop, flip, Lab
                                                                     │  ─ streaming_split(workers, equal) ─┐
                                                                     └─ val: read + decode, Lab, squash resize ─┤
                                                                        (the square inference renders)          │
    TorchTrainer workers (DDP; gloo on CPU, NCCL + bf16 autocast on GPU) <─ iter_torch_batches ────────────────┘
      per epoch: train -> val sums all_reduced -> rank 0 writes a checkpoint
      (core format + train_state.pt) via ray.train.report -> OUTPUT/train/checkpoint_*
      and rewrites OUTPUT/metrics.jsonl
    driver: at the end copies the latest valid checkpoint's model to OUTPUT/model/ (core format).

Layout of OUTPUT (a local folder or s3://bucket/prefix):

    train/                       the Ray Train run (RunConfig(name="train", storage_path=OUTPUT))
      checkpoint_manager_snapshot.json   Ray's own record of the reported checkpoints
      checkpoint_e000003_<time>/  config.json + weights.pt (core format) + train_state.pt
    metrics.jsonl                one JSON object per finished epoch
    model/                       the final model: config.json + weights.pt, for `raycolor colorize`
    _listing/<shard id>.parquet  folder inputs' listing chunks (uri, relpath, source), as colorize keeps them

Only data, plan's tasks, loop's worker, checkpoints' Ray Train calls and the driver use Ray, and each imports
it where it is used: every module imports without it.
"""
