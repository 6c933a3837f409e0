"""Values some options accept, in a module light enough for the commands' argument parsing."""

OUTPUT_MODES = ("mask", "rgba", "overlay", "color", "blur", "background")  # see pgnet.compose
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 on CUDA, fp32 elsewhere; see pgnet.runtime
