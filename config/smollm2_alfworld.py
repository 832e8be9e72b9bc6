# SmolLM2 on ALFWorld-style households: config/smollm2.py with ALFWorld's own adapters, applied after it.
#
#   python scripts/bc_lora.py --role actor --envs alfworld --threads 2
#   python scripts/bc_lora.py --role retrospector --envs alfworld --steps 100
#   python train.py config/smollm2.py config/smollm2_alfworld.py
#   python eval.py config/smollm2.py config/smollm2_alfworld.py
#
# A smaller run than HotPotQA's (fewer updates, tasks and eval trials): an ALFWorld episode takes up to 25
# actor steps and a failed one all of them, so a trial costs the 2-core CPU several times a HotPotQA one.
# Results: docs/smollm2.md.

envs = "alfworld"
out_dir = "out-smollm2-alfworld"
actor_adapter = "checkpoints/adapters/smollm2_actor_alfworld.pt"
retrospector_adapter = "checkpoints/adapters/smollm2_retrospector_alfworld.pt"

updates = 3
tasks_per_env = 16
eval_tasks = 20
eval_trials = 2
