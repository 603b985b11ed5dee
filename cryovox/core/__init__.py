"""The physics: pure functions on tensors (FFT conventions, CTF, rotations, slicing, FSC...).

Nothing here reads files, builds nn models or knows about the command line.
"""
