# A real pretrained LLM, offline, on a CPU: SmolLM2-135M-Instruct (Apache-2.0) as actor and retrospector.
#
#   scripts/fetch_smollm2.sh                  # once: the 98 MB GGUF file into checkpoints/smollm2/
#   python train.py config/smollm2.py
#   python eval.py config/smollm2.py
#
# Both are fine-tuned into this project's formats first, by LoRAs folded into their frozen weights and
# remade by scripts/bc_lora.py on pretrain.py's scripted train-split data (docs/smollm2.md): plain SmolLM2
# with few-shot examples seldom follows a plan in its memory, and its reflections never name a page to
# search, so reflections could not change the return and PPO would have nothing to learn from.
# actor:        SmolLM2 + the behaviour-cloned LoRA, frozen, in this process (batched, prefix cache)
# retrospector: SmolLM2 + the LoRA trained on reflections (right 30% of the time: the Reflexion baseline,
#               adapters off), and PPO's own LoRA on top (Retroformer)
# Prompts are capped (reflection_prompt_tokens) because CPU time grows with them. HotPotQA here;
# ALFWorld, WebShop: add config/smollm2_alfworld.py or config/smollm2_webshop.py after this file.

envs = "hotpotqa"
out_dir = "out-smollm2"  # apart from the default run's out/
device = "cpu"
dtype = "float32"  # bfloat16: 1.6x faster updates on a CPU with AMX, less without (docs/benchmarks.md)
threads = 2

actor = "local"
actor_path = "checkpoints/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
actor_adapter = "checkpoints/adapters/smollm2_actor_hotpotqa.pt"
n_examples = 0  # the adapter was trained on prompts without examples, as the tiny actor
actor_max_tokens = 64
concurrency = 16

retrospector_path = "checkpoints/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
retrospector_adapter = "checkpoints/adapters/smollm2_retrospector_hotpotqa.pt"
chat_template = False  # the adapter was trained on the plain prompt; a reflection ends at <|im_end|> (eos)
reflection_max_tokens = 96
reflection_temperature = 1.0
reflection_batch_size = 16
reflection_prompt_tokens = 1024  # as the adapter was trained (bc_lora.py --prompt-tokens)
# adapt_prompt = False: PPO's step 3.4x faster, the update 1.55x; not shown as good (docs/smollm2.md)
lora_r = 8
lora_alpha = 16.0

updates = 8
tasks_per_env = 32
max_trials = 3
eval_trials = 3

lr = 2e-4
ppo_epochs = 2
minibatch_size = 8
micro_batch_size = 4
kl_coef = 0.05

eval_tasks = 50
eval_seeds = "0,1,2"
