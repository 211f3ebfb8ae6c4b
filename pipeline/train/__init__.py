"""Distillation training: the loop, its data, teacher targets, schedules, checkpoints, logs and launching.

Heavy modules (torch) are imported by the submodules only; importing this package stays cheap.

    trainer     Trainer, TrainResult, TrainingDiverged, seed_everything, compile_choice
    data        BatchReader (whole batches from files or the decoded memmap), read_labels, student_input
    decoded     decode_training_set (the training set as a uint8 memmap, decoded once, content-keyed)
    sampler     ShardPlan (deterministic, resumable DistributedSampler-like sharding)
    targets     CachedTargets, OnlineTargets, choose_teacher_mode, teacher_class_centers
    schedule    Schedule, build_schedule (step / poly / cosine / constant with warmup)
    checkpoint  save_checkpoint, load_checkpoint, CheckpointError
    dist        DistEnv, init_process_group, collectives
    launch      torchrun_command, launch (torch.distributed.run, single or multi node)
    worker      run_job (in-process or `python -m facepipe.pipeline.train.worker JOB`)
    evaluate    StudentEvaluator (the eval callback)
    logs        TrainLog (CSV + TensorBoard)
    steptime    step-time benchmark (`distill --bench-step`): legacy settings vs this config, split by part
    floor       the FLOP floor: an sgemm probe over the student's FLOPs per image
"""
