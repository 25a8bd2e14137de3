"""Knowledge distillation and the shared training loop.

config.py (TrainConfig, DEMO_CONFIG; no heavy imports), data.py (text -> packed sequences + held-out
split), losses.py (CE, tau^2*KL, router load balance, expert load / CV), student.py (StudentSpec ->
HF config, init from the teacher), trainer.py (the loop; also trains the built-in teacher),
api.py (`distill(teacher, student, data_files, out, config) -> Path`).
"""
