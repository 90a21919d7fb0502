"""How strongly one latent fires on a word's tokens vs on image patches (why Algorithm 1's top 30
fill up with one modality). Usage: python bench/exp_latent_scale.py WORLD_DIR RUN_DIR LATENT WORD"""
import sys, glob, numpy as np, pyarrow.parquet as pq, torch
from saev_core.activations.shards import to_tensor
from transformers import AutoTokenizer
from saev_core.sae.checkpoint import load_sae
from saev_core.sae.checkpoint import resolve_sae_dir
W, R, j, word = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
tok = AutoTokenizer.from_pretrained(f"{W}/model")
tbl = pq.read_table(sorted(glob.glob(f"{R}/dump/activations/*.parquet")))
acts, X = tbl.drop_columns(["activation"]).to_pandas(), to_tensor(tbl)
sae = load_sae(resolve_sae_dir(f"{R}/sae")).eval()
with torch.no_grad(): z = sae.encode(X)[:, j].numpy()
img = (acts.modality == "image").values
t = z[(~img) & (acts.token_id.values == tok.convert_tokens_to_ids(word))]
i = z[img & (z > 0)]
other = z[(~img) & (acts.modality.values != "special") & (acts.token_id.values != tok.convert_tokens_to_ids(word))]
print("word", word, "n", len(t), "firing", (t > 0).mean().round(2), "median of fired", np.median(t[t > 0]).round(2), "p90", np.percentile(t[t>0], 90).round(2),
      "| other words firing", (other > 0).mean().round(3))
print("image fired n", len(i), "median", np.median(i).round(2), "p90", np.percentile(i, 90).round(2))
