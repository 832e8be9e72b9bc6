# ALFWorld-style households with a local actor checkpoint (no server), e.g. a small instruct model
# converted to / saved in the Hugging Face layout. CPU works for sub-1B models; a GPU is faster.
#   python train.py config/alfworld_local.py
#   python eval.py config/alfworld_local.py
# Both models are loaded in this process: an 8B actor in bf16 (~16 GB) + a 1B retrospector
# (~2.5 GB + LoRA) need a 24 GB+ GPU; on CPU use a tiny actor (checkpoints/tiny/actor).

envs = "alfworld"
env_options = '{"alfworld": {"max_steps": 30}}'
device = "cpu"
dtype = "float32"

actor = "local"
actor_path = "checkpoints/tiny/actor"
actor_max_tokens = 64
concurrency = 16

retrospector_path = "checkpoints/tiny/retrospector"
reflection_max_tokens = 96

updates = 8
tasks_per_env = 16
max_trials = 4
eval_trials = 4
eval_tasks = 40
