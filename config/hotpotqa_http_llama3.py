# HotPotQA with real models: the paper's setting, scaled to one GPU.
#
#   actor:        Llama-3.1-8B-Instruct served by vLLM (OpenAI-compatible), frozen, e.g.
#                   vllm serve meta-llama/Llama-3.1-8B-Instruct --max-model-len 8192 \
#                        --gpu-memory-utilization 0.55 --port 8000
#                 (~16 GB of bf16 weights + KV cache; or serve any model.py checkpoint with
#                  `python actor.py serve --model PATH`)
#   retrospector: Llama-3.2-3B-Instruct (or 1B) with LoRA, trained in this process on the same GPU:
#                 3B in bf16 = ~6.5 GB of weights; LoRA r=16 on all projections adds ~24M float32
#                 params (+ AdamW state ~0.3 GB); activations for micro-batches of 2 x ~3k tokens
#                 fit in ~20 GB. One 80 GB H100/A100 holds both (vLLM capped at 55%); on two
#                 24 GB cards run vLLM on one and train.py on the other.
#   python train.py config/hotpotqa_http_llama3.py
#   python eval.py config/hotpotqa_http_llama3.py
# The real HotPotQA: add "source": "path/to/hotpot_dev_distractor_v1.json" to env_options.

envs = "hotpotqa"
env_options = '{"hotpotqa": {"difficulty": "hard"}}'
device = "cuda"
dtype = "bfloat16"

actor = "http"
actor_url = "http://127.0.0.1:8000/v1"
actor_model = "meta-llama/Llama-3.1-8B-Instruct"
actor_api = "chat"
actor_api_key_env = "OPENAI_API_KEY"  # unset for a local vLLM: no key is sent
actor_context_window = 8192
actor_max_tokens = 128
actor_temperature = 0.0  # the paper's frozen actor is greedy; ReAct retries use the same setting
concurrency = 32  # episodes in flight (HTTP requests)
n_examples = 2  # few-shot expert episodes in the actor's prompt

retrospector_path = "checkpoints/Llama-3.2-3B-Instruct"  # HF folder: config.json, safetensors, tokenizer
chat_template = True  # Llama 3 chat format, reflection ends at <|eot_id|>
reflection_max_tokens = 256
reflection_temperature = 0.9
reflection_batch_size = 16
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

eval_tasks = 100
eval_seeds = "0,1,2"
