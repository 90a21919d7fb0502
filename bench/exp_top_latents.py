"""What each given latent fires on: its most frequent text tokens, and the content of the image
patches it fires on (the object in the patch's grid cell, or "empty"), as shares of its firings
on the first dump shard.

Usage: python bench/exp_top_latents.py WORLD_DIR RUN_DIR LATENT [LATENT ...]
(RUN_DIR holds dump/ and sae/, e.g. symlinks to the store's dump and train artifacts)."""
import sys, glob, numpy as np, pyarrow.parquet as pq, torch, pandas as pd
from transformers import AutoTokenizer
from saev_core.sae.checkpoint import load_sae
from saev_core.sae.checkpoint import resolve_sae_dir
from saev_core.demo.scenes import POSITIONS, Scene
W, R = sys.argv[1], sys.argv[2]; lats = [int(x) for x in sys.argv[3:]]
tok = AutoTokenizer.from_pretrained(f"{W}/model")
lab = pq.read_table(f"{W}/labels.parquet").to_pandas(); lab = lab[lab.dataset == "demo-rlaif"].set_index("sample_id")
acts = pq.read_table(sorted(glob.glob(f"{R}/dump/activations/*.parquet"))[0]).to_pandas()
acts = acts[acts.modality != "special"].reset_index(drop=True)
X = torch.tensor(np.stack(acts.activation.values).astype(np.float32))
sae = load_sae(resolve_sae_dir(f"{R}/sae")).eval()
with torch.no_grad(): Z = sae.encode(X).numpy()
img = (acts.modality == "image").values
content = np.array(["empty"] * len(acts), dtype=object)
for sid, g in acts[img].groupby("sample_id"):
    cells = {POSITIONS[o.position]: f"{o.color} {o.shape}" for o in Scene.parse(lab.loc[sid, "scene"]).objects}
    for p, i in enumerate(g.sort_values("token_pos").index.values):
        content[i] = cells.get(((p % 4) // 2, (p // 4) // 2), "empty")
for j in lats:
    z = Z[:, j]
    t = pd.Series(tok.convert_ids_to_tokens([int(x) for x in acts.token_id.values[(~img) & (z > 0)]])).value_counts(normalize=True).head(4)
    c = pd.Series(content[img & (z > 0)]).value_counts(normalize=True).head(4)
    print(j, "text:", {k: round(v, 2) for k, v in t.items()}, "| image:", {k: round(v, 2) for k, v in c.items()})
