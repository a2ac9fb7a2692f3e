"""Integrations with other libraries, each an optional extra imported only on demand.

`fusedloss.integrations.transformers.apply(model)` computes a Hugging Face causal LM's training
loss with fusedloss. Nothing here is imported by `import fusedloss`.
"""
