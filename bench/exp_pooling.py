"""Algorithm 1's pooling, simulated offline on a dump and an SAE (all samples as the reference):
"paper" (top 30 over all positions), "dedupe" (top 30 over per-(sample, modality) maxima) or
"balanced" (each modality's activations over the latent's 99th percentile in that modality).
Prints the cross-modal count, the saev and co-occurrence AUROC, and the top latents' words.

Usage: python bench/exp_pooling.py WORLD_DIR RUN_DIR paper|dedupe|balanced [N_TOP]"""
import sys, glob, numpy as np, pyarrow.parquet as pq, torch, pandas as pd
import pyarrow.compute as pc
from saev_core.activations.shards import to_tensor
from transformers import AutoTokenizer
from saev_core.sae.checkpoint import load_sae
from saev_core.sae.checkpoint import resolve_sae_dir
from saev_core.scoring.quality import auroc
W, R = sys.argv[1], sys.argv[2]
mode = sys.argv[3]
dedupe = mode == "dedupe"
tok = AutoTokenizer.from_pretrained(f"{W}/model")
tbl = pq.read_table(sorted(glob.glob(f"{R}/dump/activations/*.parquet")))
tbl = tbl.filter(pc.not_equal(tbl.column("modality"), "special"))
acts, X = tbl.drop_columns(["activation"]).to_pandas(), to_tensor(tbl)
sae = load_sae(resolve_sae_dir(f"{R}/sae")).eval()
with torch.no_grad(): Z = sae.encode(X).numpy()
Xn = X.numpy(); img = (acts.modality == "image").values
sid_codes, sids = pd.factorize(acts.sample_id)
seg = sid_codes * 2 + (~img)
d = Z.shape[1]
# per (segment, latent) max and argmax row
order = np.argsort(seg, kind="stable")
bounds = np.r_[0, np.nonzero(np.diff(seg[order]))[0] + 1, len(order)]
S = len(bounds) - 1
segmax = np.zeros((S, d), np.float32); segarg = np.zeros((S, d), np.int64); segid = np.zeros(S, np.int64)
for k in range(S):
    rows = order[bounds[k]:bounds[k + 1]]
    zz = Z[rows]; a = zz.argmax(0)
    segmax[k] = zz[a, np.arange(d)]; segarg[k] = rows[a]; segid[k] = seg[rows[0]]
seg_img = (segid % 2) == 0
def unit(v): return v / np.linalg.norm(v, axis=-1, keepdims=True)
w = np.zeros(d); kinds = []
for j in range(d):
    if dedupe:
        top = np.argsort(-segmax[:, j])[:30]; top = top[segmax[top, j] > 0]
        is_i = seg_img[top]; rows = segarg[top, j]
    elif mode == "balanced":
        zz = Z[:, j].copy()
        for m in (img, ~img):
            pos = zz[m][zz[m] > 0]
            if pos.size: zz[m] = zz[m] / np.percentile(pos, 99)
        top = np.argsort(-zz)[:30]; top = top[zz[top] > 0]
        is_i = img[top]; rows = top
    else:
        zz = Z[:, j]; top = np.argsort(-zz)[:30]; top = top[zz[top] > 0]
        is_i = img[top]; rows = top
    ni, nt = is_i.sum(), (~is_i).sum()
    if ni >= 5 and nt >= 5:
        ti, ii = rows[~is_i][:5], rows[is_i][:5]
        w[j] = (unit(Xn[ti]) @ unit(Xn[ii]).T).mean(); kinds.append("x")
print("cross-modal latents", len(kinds))
# scores
smp = segid // 2
both = {}
pres = segmax > 0
score = np.zeros(len(sids)); co = np.zeros(len(sids))
for s in range(len(sids)):
    ks = np.nonzero(smp == s)[0]
    if len(ks) < 2: continue
    c = pres[ks[0]] & pres[ks[1]]
    score[s] = w[c].sum(); co[s] = c.sum()
lab = pq.read_table(f"{W}/labels.parquet").to_pandas(); lab = lab[lab.dataset == "demo-rlaif"].set_index("sample_id")
clean = lab.loc[list(sids), "is_clean"].values
print("AUROC saev", round(auroc(score, clean), 3), "cooc", round(auroc(co, clean), 3))
# top cross-modal latents and the words they fire on most in text
for j in np.argsort(-w)[:int(sys.argv[4]) if len(sys.argv) > 4 else 10]:
    zt = Z[~img, j]; ids = acts.token_id.values[~img]
    top_tok = pd.Series(ids[zt > 0]).value_counts().head(3)
    print(j, round(w[j], 3), [tok.convert_ids_to_tokens(int(t)) for t in top_tok.index])
