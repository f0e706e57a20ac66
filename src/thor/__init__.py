"""THOR, the Trace-based Hardware-driven layer-ORiented natural gradient optimizer, in portable ops.

capture.py   per-layer statistics capture (A in the forward pass, G in the backward pass)
blocks.py    block-diagonal factor algebra (Gram blocks, damped inverses, preconditioning)
optimizer.py per-layer factor/inverse state, the trace rule, and the preconditioned momentum step
trainer.py   the training cell that runs the update graph on update steps and the plain graph otherwise
"""
