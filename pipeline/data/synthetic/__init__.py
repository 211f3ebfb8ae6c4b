"""Generated faces, used by teacher (data-free mode), distill and quantize alike.

    dcgan      the DCGAN of the gan-face-generate wheel, rebuilt in plain torch
    faces      generated or foreign images brought to the ArcFace 112x112 layout
    inversion  DeepInversion images from a model's own BatchNorm statistics
    datafree   data-free mode: a generated training set, scored by agreement with the teacher
"""
