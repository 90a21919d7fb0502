"""Do image patches and words share content directions? Per colour/shape word: the mean residual
of that word's text tokens and of the image patches showing it, each centred on its modality's
mean; prints the cosine matrix (a diagonal means shared directions).

Usage: python bench/exp_modality_cosine.py WORLD_DIR RUN_DIR (RUN_DIR/dump from `saev dump`)."""
import sys, numpy as np, pyarrow.parquet as pq, glob
from saev_core.activations.shards import to_tensor
from transformers import AutoTokenizer
W, R = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(f"{W}/model")
lab = pq.read_table(f"{W}/labels.parquet").to_pandas()
lab = lab[lab.dataset == "demo-rlaif"].set_index("sample_id")
from saev_core.demo.scenes import COLORS, SHAPES, POSITIONS
tbl = pq.read_table(glob.glob(f"{R}/dump/activations/*.parquet"))
acts, X = tbl.drop_columns(["activation"]).to_pandas(), to_tensor(tbl).numpy()
acts["row"] = np.arange(len(acts))
img = acts.modality == "image"; txt = acts.modality == "text"
mi, mt = X[img.values].mean(0), X[txt.values].mean(0)
print("norms img/txt", np.linalg.norm(X[img.values],axis=1).mean(), np.linalg.norm(X[txt.values],axis=1).mean(), "cos of means", mi@mt/np.linalg.norm(mi)/np.linalg.norm(mt))
words = list(COLORS) + list(SHAPES)
ids = {w: tok.convert_tokens_to_ids(w) for w in words}
T = {}; I = {w: [] for w in words}
for w in words:
    rows = acts[txt & (acts.token_id == ids[w])].row.values
    T[w] = (X[rows] - mt).mean(0) if len(rows) else None
for sid, g in acts[img].groupby("sample_id"):
    scene = lab.loc[sid, "scene"]
    cells = {}
    for part in scene.split("; "):
        c, s, _, *pos = part.split(); cells[POSITIONS[" ".join(pos)]] = (c, s)
    g = g.sort_values("token_pos")
    for p, r in enumerate(g.row.values):
        o = cells.get(((p % 4)//2, (p//4)//2))
        if o:
            I[o[0]].append(r); I[o[1]].append(r)
Im = {w: (X[I[w]] - mi).mean(0) for w in words if I[w]}
def cos(a,b): return float(a@b/np.linalg.norm(a)/np.linalg.norm(b))
print("       " + " ".join(f"{w[:6]:>7}" for w in words))
for w in words:
    if T[w] is None: continue
    print(f"{w[:6]:>7}" + " ".join(f"{cos(T[w], Im[v]):7.2f}" for v in words))
