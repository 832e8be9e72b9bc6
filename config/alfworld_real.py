# The real ALFWorld: the 134 unseen games (valid_unseen) that ReAct, Reflexion and Retroformer report,
# played on TextWorld's engine by worlds/alfworld_real.py, with an actor behind an OpenAI-compatible
# server and the retrospector trained here. Set up once (needs internet):
#   pip install -r requirements-alfworld.txt
#   alfworld-download              # ~/.cache/alfworld (or $ALFWORLD_DATA): json_2.1.1/{train,valid_*}
#   vllm serve meta-llama/Llama-3.1-8B-Instruct --max-model-len 8192 --gpu-memory-utilization 0.55 --port 8000
# then
#   python train.py config/alfworld_real.py
#   python eval.py config/alfworld_real.py     # prints the task list's sha256: compare it with others'
# Add "data": "/path/to/alfworld-data" to the env options to read another folder. PPO draws its games
# from the first 3,000 of the 3,553 train games (the rest is the val slice, eval_split=val).

envs = "alfworld"
env_options = '{"alfworld": {"source": "alfworld", "max_steps": 50}}'  # the paper's harness: 50 actions
device = "cuda"
dtype = "bfloat16"

actor = "http"
actor_url = "http://127.0.0.1:8000/v1"
actor_model = "meta-llama/Llama-3.1-8B-Instruct"
actor_api = "chat"
actor_api_key_env = "OPENAI_API_KEY"  # unset for a local vLLM: no key is sent
actor_context_window = 8192
actor_max_tokens = 96
actor_temperature = 0.0
concurrency = 32
# Few-shot episodes come from the generated ALFWorld world's expert; they use ALFWorld 0.3's
# "put X in/on Y", which the adapter sends as 0.4's "move X to Y".
n_examples = 2

retrospector_path = "checkpoints/Llama-3.2-3B-Instruct"
chat_template = True
reflection_max_tokens = 256
reflection_temperature = 0.9
reflection_batch_size = 16
reflection_prompt_tokens = 3072
grad_checkpoint = True
lora_r = 16
lora_alpha = 32.0

updates = 20
tasks_per_env = 64
max_trials = 4
eval_trials = 4
checkpoint_every = 1

lr = 2e-5
ppo_epochs = 2
minibatch_size = 16
micro_batch_size = 2
kl_coef = 0.05
target_kl = 6.0

eval_tasks = 134  # all of valid_unseen
eval_seeds = "0,1,2"
