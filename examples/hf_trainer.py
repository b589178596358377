# Token-weighted training in Hugging Face Trainer (CPU), scored by `tokenweight serve`.
import os

from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

import tokenweight.integrations.transformers as tw
from tokenweight.bundled import MODEL_DIR, SNIPPET_FILE

ids = AutoTokenizer.from_pretrained(MODEL_DIR)((MODEL_DIR / SNIPPET_FILE).read_text())["input_ids"]
rows = [{"input_ids": ids[i : i + 1024]} for i in range(0, len(ids) - 1024, 1024)]
scores = tw.ServiceScores(os.environ.get("SCORER_URL", "grpc://localhost:50051"), hybrid=True)
loss = tw.TokenWeightLoss(tw.WeightingConfig.from_preset("dense", lam=0.75), hybrid=True)
args = TrainingArguments("runs/hf", max_steps=1, use_cpu=True, dataloader_num_workers=1)
model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
tw.TokenWeightTrainer(model, args, tw.ScoreCollator(scores), rows, token_weight_loss=loss).train()
