# SmolLM2 on WebShop-style shopping: config/smollm2.py with WebShop's own adapters, applied after it.
#
#   python scripts/bc_lora.py --role actor --envs webshop
#   python scripts/bc_lora.py --role retrospector --envs webshop --steps 100
#   python train.py config/smollm2.py config/smollm2_webshop.py
#   python eval.py config/smollm2.py config/smollm2_webshop.py
#
# As small a run as ALFWorld's (config/smollm2_alfworld.py), for the 2-core CPU's sake: an episode takes
# up to 15 actor steps over long result pages. Results: docs/smollm2.md.

envs = "webshop"
out_dir = "out-smollm2-webshop"
actor_adapter = "checkpoints/adapters/smollm2_actor_webshop.pt"
retrospector_adapter = "checkpoints/adapters/smollm2_retrospector_webshop.pt"

updates = 3
tasks_per_env = 16
eval_tasks = 20
eval_trials = 2
