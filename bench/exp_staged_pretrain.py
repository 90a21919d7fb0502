"""Experiment (issue 7, point 5): staged demo pretraining so image patches reuse the text LM's
word features, the way LLaVA's projector feeds a pretrained LM.

A: the LM alone, on prompts whose 16 image slots hold word embeddings of the object in that
   patch's grid cell (see the target modes below).
B: LM frozen; vision tower + projector trained on the QA answers, plus AUX x the relative MSE of
   each projected patch to that target.
C: a short joint fine-tune at a tenth of the learning rate.

Usage: python bench/exp_staged_pretrain.py OUT_DIR A_STEPS B_STEPS C_STEPS AUX [sum|sum-dot|checkerboard] [EMB_SCALE]
("sum": every patch of an object towards (E[colour] + E[shape]) / sqrt 2, empty cells towards
E[<pad>]; "sum-dot": the same with empty cells towards E["."]; "checkerboard": each patch of an
object towards its colour or its shape word, empty cells E[<pad>])
(the builder's own pretraining is swapped for this one; everything else is `saev demo build`).
Results and the follow-up commands are in bench/RESULTS.md."""
import math, random, sys, time, torch
import saev_core.demo.build as B
from saev_core.demo import pretrain as P
from saev_core.demo.scenes import POSITIONS

A_STEPS, B_STEPS, C_STEPS = [int(x) for x in sys.argv[2:5]]
AUX = float(sys.argv[5])
TARGETS = sys.argv[6] if len(sys.argv) > 6 else "sum"  # or "sum-dot", "checkerboard"
EMB_SCALE = float(sys.argv[7]) if len(sys.argv) > 7 else 1.0  # token embeddings initialised this much larger

def targets(model, processor, rows, ids):
    E = model.get_input_embeddings().weight
    tok = processor.tokenizer
    out = torch.zeros(len(rows), 16, E.shape[1])
    dot = E[tok.convert_tokens_to_ids(".")] if TARGETS == "sum-dot" else E[tok.pad_token_id]
    for i, r in enumerate(rows):
        cells = {}
        for part in r["scene"].split("; "):
            color, shape, _, *pos = part.split()
            cells[POSITIONS[" ".join(pos)]] = (tok.convert_tokens_to_ids(color), tok.convert_tokens_to_ids(shape))
        for p in range(16):
            px, py = p % 4, p // 4
            c = cells.get((px // 2, py // 2))
            q = (py % 2) * 2 + (px % 2)  # checkerboard: colour on the cell's diagonal patches, shape on the others
            if not c:
                out[i, p] = dot
            elif TARGETS in ("sum", "sum-dot"):
                out[i, p] = (E[c[0]] + E[c[1]]) / math.sqrt(2)
            else:
                out[i, p] = E[c[0]] if q in (0, 3) else E[c[1]]
    return out

def run(model, processor, rows, steps, mode, lr, bs=64, seed=0):
    rng = random.Random(seed)
    data = P.encode(processor, rows)
    img_id = model.config.image_token_index
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    order = []
    model.train()
    for step in range(steps):
        if len(order) < bs:
            order = list(range(len(rows))); rng.shuffle(order)
        idx, order = order[:bs], order[bs:]
        ids = data.inputs["input_ids"][idx]; am = data.inputs["attention_mask"][idx]; lab = data.labels[idx]
        emb_layer = model.get_input_embeddings()
        tgt = targets(model, processor, [rows[i] for i in idx], ids)
        mask = ids == img_id
        if mode == "A":
            emb = emb_layer(ids.clamp(max=emb_layer.num_embeddings - 1)).clone()
            tgt = targets(model, processor, [rows[i] for i in idx], ids)  # with grad through E
            emb[mask] = tgt.reshape(-1, tgt.shape[-1]).to(emb.dtype)
            logits = model(inputs_embeds=emb, attention_mask=am).logits
            aux = torch.zeros(())
        else:
            pv = data.inputs["pixel_values"][idx]
            feats = model.get_image_features(pixel_values=pv, vision_feature_layer=-1, vision_feature_select_strategy="default")
            feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
            feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats
            feats = feats.reshape(len(idx), 16, -1)
            emb = emb_layer(ids).clone()
            emb[mask] = feats.reshape(-1, feats.shape[-1]).to(emb.dtype)
            logits = model(inputs_embeds=emb, attention_mask=am).logits
            aux = ((feats - tgt.detach()) ** 2).sum(-1).mean() / (tgt.detach() ** 2).sum(-1).mean()
        lg, lb = logits[:, :-1], lab[:, 1:]
        loss = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100)
        total = loss + AUX * aux
        opt.zero_grad(set_to_none=True); total.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step(); sched.step()
        if step % 100 == 0:
            print(mode, step, round(loss.item(), 3), round(float(aux), 3), flush=True)
    model.eval()

def staged(model, processor, rows, steps, batch_size=64, lr=3e-3, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():  # pre-norm blocks write at a fixed scale: big embeddings keep early residuals token-like
        model.get_input_embeddings().weight.mul_(EMB_SCALE)
    lm = [model.model.language_model, model.lm_head]
    vis = [model.model.vision_tower, model.model.multi_modal_projector]
    for m in vis:
        for p in m.parameters(): p.requires_grad_(False)
    t = time.time(); run(model, processor, rows, A_STEPS, "A", lr); print("A done", time.time() - t, flush=True)
    for m in vis:
        for p in m.parameters(): p.requires_grad_(True)
    for m in lm:
        for p in m.parameters(): p.requires_grad_(False)
    t = time.time(); run(model, processor, rows, B_STEPS, "B", lr); print("B done", time.time() - t, flush=True)
    print("acc after B", P.answer_accuracy(model, processor, rows[:500]), flush=True)
    for p in model.parameters(): p.requires_grad_(True)
    if C_STEPS:
        run(model, processor, rows, C_STEPS, "C", lr / 10)
    return [0.0]

B.pretrain = staged
rec = B.build_world(B.DemoConfig(), sys.argv[1], force=True)
print(rec["pretrain"])
