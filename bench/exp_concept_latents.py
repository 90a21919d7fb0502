"""Is there an SAE latent per colour/shape that fires on that word AND on the patches showing it?

For each word: the latent maximising min(text firing-rate gain, image firing-rate gain), where a
gain is the firing rate on the concept's tokens (the word; the patches of cells holding an object
of that colour/shape) minus the rate on the other tokens of the modality.

Usage: python bench/exp_concept_latents.py WORLD_DIR RUN_DIR (RUN_DIR/dump and RUN_DIR/sae)."""
import sys, glob, numpy as np, pyarrow.parquet as pq, torch
from saev_core.activations.shards import to_tensor
from transformers import AutoTokenizer
from saev_core.sae.checkpoint import load_sae
from saev_core.sae.checkpoint import resolve_sae_dir
from saev_core.demo.scenes import COLORS, SHAPES, POSITIONS
W, R = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(f"{W}/model")
lab = pq.read_table(f"{W}/labels.parquet").to_pandas(); lab = lab[lab.dataset == "demo-rlaif"].set_index("sample_id")
tbl = pq.read_table(sorted(glob.glob(f"{R}/dump/activations/*.parquet"))[0])
acts, X = tbl.drop_columns(["activation"]).to_pandas(), to_tensor(tbl)
sae = load_sae(resolve_sae_dir(f"{R}/sae")).eval()
with torch.no_grad(): Z = sae.encode(X).numpy()
img = (acts.modality == "image").values; txt = (acts.modality == "text").values
words = list(COLORS) + list(SHAPES)
tid = acts.token_id.values
concept_img = {w: np.zeros(len(acts), bool) for w in words}
for sid, g in acts[img].groupby("sample_id"):
    cells = {}
    for part in lab.loc[sid, "scene"].split("; "):
        c, s, _, *pos = part.split(); cells[POSITIONS[" ".join(pos)]] = (c, s)
    for p, i in enumerate(g.sort_values("token_pos").index.values):
        o = cells.get(((p % 4)//2, (p//4)//2))
        if o: concept_img[o[0]][i] = True; concept_img[o[1]][i] = True
alive = (Z > 0).any(0)
print("alive latents", alive.sum(), "tokens", len(acts))
for w in words:
    tmask = txt & (tid == tok.convert_tokens_to_ids(w))
    imask = concept_img[w]
    best = None
    for j in np.where(alive)[0]:
        z = Z[:, j]
        ft, fi = (z[tmask] > 0).mean() if tmask.any() else 0, (z[imask] > 0).mean()
        ot, oi = (z[txt & ~tmask] > 0).mean(), (z[img & ~imask] > 0).mean()
        sc = min(ft - ot, fi - oi)
        if best is None or sc > best[0]: best = (sc, j, ft, ot, fi, oi)
    print(f"{w:>9} n_txt={tmask.sum():4d} n_img={imask.sum():5d} best latent {best[1]:4d}: fires text {best[2]:.2f} vs other {best[3]:.2f}; image {best[4]:.2f} vs other {best[5]:.2f}")
