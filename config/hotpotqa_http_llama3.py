# HotPotQA with real models: the paper's setting, scaled to one GPU.
#
#   actor:        Llama-3.1-8B-Instruct served by vLLM (OpenAI-compatible), frozen, e.g.
#                   vllm serve meta-llama/Llama-3.1-8B-Instruct --max-model-len 8192 \
#                        --gpu-memory-utilization 0.55 --port 8000
#                 (~16 GB of bf16 weights + KV cache; or serve any model.py checkpoint with
#                  `python actor.py serve --model PATH`)
#   retrospector: Llama-3.2-3B-Instruct (or 1B) with LoRA, trained in this process on the same GPU:
#                 6 GB of bf16 weights, LoRA r=16 on all projections (24M float32 params + AdamW,
#                 0.4 GB), and for a micro-batch of 2 x (3,072 prompt + 256 reflection) tokens about
#                 20 GB of activations, 1.8 GB with grad_checkpoint (python bench/bench_memory.py has
#                 the estimate for 1B / 3B / 8B). One 80 GB H100/A100 holds both (vLLM capped at 55%);
#                 on two 24 GB cards run vLLM on one and train.py on the other.
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
reflection_prompt_tokens = 3072  # a long trial is elided to this: Llama 3's 131k context is no budget
grad_checkpoint = True  # a third more compute for a tenth of the activations
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
