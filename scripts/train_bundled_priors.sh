#!/usr/bin/env bash
# Re-trains the bundled priors with the commands that trained the shipped ones: the two
# shape-completion priors (2 CPU cores; adrenal about 170 minutes in three runs, head and neck about
# 225 in four) and the two hippocampus segmentation priors (one core each, 60 and 20 minutes
# beside other jobs). Time limits stop training, so the step reached depends on the machine; the
# learning rate anneals over the time limit when it ends a stage first (the shipped shape priors'
# first runs predate that: their rate followed the step count, so the head-and-neck encoder
# stopped at step 887 of 1500 half-annealed).
# The commands also run on a GPU with --device cuda, or on several with torchrun.
# Pick some with ONLY="metaseg nisf" (default: all; ONLY=refine adds the refiner to the existing MetaSeg prior).
# Data: ../shared/data (see its README). Logs go to runs/ (git-ignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA="${DATA:-../shared/data}"
OUT="${OUT:-inr_engine/data/priors}"
ONLY="${ONLY:-adrenal hn metaseg nisf}"
mkdir -p runs "$OUT"
COMMON=(--meta-batch 8 --lr 3e-4 --seed 0 --steps 2000)

# Adrenal glands: AdrenalMNIST3D 64^3 train split; validation = the last 12 shapes of the npz's val
# split (the benchmark scores the first 40). The context encoder trains first (30 min), then the
# INR is meta-learned on evidence that includes it (20 min); a second run continues both from
# there (--init: encoder 30 min at a lower rate, INR 8 min), and a third (encoder 75 min with
# data echoing, INR 8 min).
ADRENAL=(--dataset adrenalmnist3d --data-root "$DATA" --max-val 12
         --description "Adrenal glands (AdrenalMNIST3D, 64^3 at 1 mm), with a context encoder")
[[ " $ONLY " == *" adrenal "* ]] && python -m benchmarks.train_shape_prior "${COMMON[@]}" --steps 1000 --threads 2 --data-workers 2 \
    --time-limit 1200 --encoder-steps 2200 --encoder-time-limit 1800 \
    --config algorithm=fometasgd context_points=1024 target_points=2048 adam_lr=3e-6 \
             encoder_channels=16,32,64 held_out_slices=2 \
    "${ADRENAL[@]}" --out runs/adrenal_stage1.safetensors --log runs/adrenal.jsonl \
  && python -m benchmarks.train_shape_prior --init runs/adrenal_stage1.safetensors --meta-batch 8 --seed 1 --threads 2 \
    --data-workers 2 --lr 1e-4 --steps 200 --time-limit 480 --encoder-steps 4000 --encoder-time-limit 1800 \
    --encoder-lr 3e-4 "${ADRENAL[@]}" --out runs/adrenal_stage2.safetensors --log runs/adrenal.jsonl \
  && python -m benchmarks.train_shape_prior --init runs/adrenal_stage2.safetensors --meta-batch 8 --seed 2 --threads 2 \
    --data-workers 2 --lr 1e-4 --steps 200 --time-limit 480 --encoder-steps 30000 --encoder-time-limit 4500 \
    --encoder-lr 3e-4 --encoder-echo 3 "${ADRENAL[@]}" --out "$OUT/adrenal.safetensors" --log runs/adrenal.jsonl

# Head-and-neck organs: 18 of the 21 (brain and lungs left out: their boxes make a training task
# ten times slower), both raters, of 20 scans; validation = 5 scans chosen with split seed 0
# (benchmarks.datasets.hn_split), oncologist masks of the parotids, mandible, brainstem and
# spinal cord (the first 15, three scans, scored during training). Gaps of 4-24 mm in training
# cover every 2nd-10th 2.5 mm slice. The context encoder runs on a 2 mm grid; it trains first
# (20 min), then the INR is meta-learned (20 min); a second run continues both (42 and 12 min), a
# third once more (40 and 6 min, on an otherwise idle machine: 5,377 encoder steps). The fourth
# (75 and 10 min: 15,008 encoder steps) slices 70% of the single-orientation tasks axially, the
# plane of the 2.5 mm acquisition where users draw, and uses each prepared example three times.
HN_ORGANS=(Brainstem Cochlea-Lt Cochlea-Rt Lacrimal-Lt Lacrimal-Rt Lens-Lt Lens-Rt Mandible Optic-Nerve-Lt
           Optic-Nerve-Rt Orbit-Lt Orbit-Rt Parotid-Lt Parotid-Rt Spinal-Canal Spinal-Cord Submandibular-Lt
           Submandibular-Rt)
HN=(--dataset hn-oar --data-root "$DATA" --cache-dir runs/cache --organs "${HN_ORGANS[@]}" --max-val 15
    --description "Head-and-neck organs at risk (DeepMind H&N CT masks, 2.5 mm slices), with a context encoder")
[[ " $ONLY " == *" hn "* ]] && python -m benchmarks.train_shape_prior "${COMMON[@]}" --steps 1200 --threads 2 --data-workers 2 \
    --time-limit 1200 --encoder-steps 1500 --encoder-time-limit 1200 \
    --config algorithm=fometasgd context_points=1024 target_points=2048 scale_mm=64 margin_mm=10 \
             every_min=4 every_max=24 adam_lr=3e-6 encoder_channels=16,32,64 encoder_pitch_mm=2 held_out_slices=2 \
    "${HN[@]}" --out runs/hn_stage1.safetensors --log runs/hn.jsonl \
  && python -m benchmarks.train_shape_prior --init runs/hn_stage1.safetensors --meta-batch 8 --seed 1 --threads 2 \
    --data-workers 2 --lr 1e-4 --steps 240 --time-limit 720 --encoder-steps 6000 --encoder-time-limit 2500 \
    --encoder-lr 5e-4 "${HN[@]}" --out runs/hn_stage2.safetensors --log runs/hn.jsonl \
  && python -m benchmarks.train_shape_prior --init runs/hn_stage2.safetensors --meta-batch 8 --seed 2 --threads 2 \
    --data-workers 2 --lr 1e-4 --steps 200 --time-limit 600 --encoder-steps 6000 --encoder-time-limit 2400 \
    --encoder-lr 3e-4 "${HN[@]}" --out runs/hn_stage3.safetensors --log runs/hn.jsonl \
  && python -m benchmarks.train_shape_prior --init runs/hn_stage3.safetensors --meta-batch 8 --seed 3 --threads 2 \
    --data-workers 2 --lr 1e-4 --steps 200 --time-limit 600 --encoder-steps 30000 --encoder-time-limit 4500 \
    --encoder-lr 3e-4 --encoder-echo 3 --config acquisition_axis_prob=0.7 \
    "${HN[@]}" --out "$OUT/head-neck-organs.safetensors" --log runs/hn.jsonl

# Hippocampus (MSD Task04): 40 subjects held out for the benchmark (split seed 0), 12 of the
# other 160 for checkpoint selection and the step counts (seed 1), 148 for training.
SEG=(--data "$DATA/msd_hippocampus" --holdout 40 --val 12 --classes background anterior posterior --seed 0)
[[ " $ONLY " == *" metaseg "* ]] && inr-engine train metaseg "${SEG[@]}" --steps 2400 --batch 4 --lr 3e-4 \
    --threads 1 --time-limit 3600 --out "$OUT/hippocampus-metaseg.safetensors" --log runs/metaseg.jsonl \
    --description "MetaSeg hippocampus prior (MSD Task04, anterior/posterior)"
# MetaSeg's MORSE-style boundary refiner ('segment --refine'), trained on 48 training-side subjects.
[[ " $ONLY " == *" metaseg "* || " $ONLY " == *" refine "* ]] && inr-engine train refine \
    --prior "$OUT/hippocampus-metaseg.safetensors" --data "$DATA/msd_hippocampus" --holdout 40 --cases 48 \
    --threads 2 --out "$OUT/hippocampus-metaseg.safetensors"
[[ " $ONLY " == *" nisf "* ]] && inr-engine train nisf "${SEG[@]}" --steps 1500 --latent-steps 300 --batch 8 \
    --lr 5e-4 --threads 1 --time-limit 900 --config latent_lr=0.01 inner_steps=3 \
    --out "$OUT/hippocampus-nisf.safetensors" --log runs/nisf.jsonl \
    --description "NISF hippocampus prior (MSD Task04, anterior/posterior)"

inr-engine priors manifest "$OUT"

# Segment colours for the Slicer modules: Slicer's GenericAnatomyColors hippocampus yellow for the
# anterior part, a warmer shade for the posterior part (background first).
HIPPOCAMPUS_COLORS='[[0, 0, 0], [0.8627, 0.8471, 0.0784], [0.9451, 0.6275, 0.2353]]'
for prior in hippocampus-metaseg hippocampus-nisf; do
    [[ -f "$OUT/$prior.safetensors" ]] && inr-engine priors set "$OUT/$prior.safetensors" \
        --set class_colors="$HIPPOCAMPUS_COLORS"
done
