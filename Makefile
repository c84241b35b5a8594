# Two commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# configs/demo.flags names the same directory
DEMO_DIR := demo_run

.PHONY: install install-gpu demo study test test-all clean

# registry.py: the console scripts are made at install time from it
$(STAMP): setup.py crfgan_tf/cli/registry.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# NVIDIA GPUs (Linux): TensorFlow's CUDA libraries into the same .venv (the `gpu` extra);
# then the GPUs TensorFlow sees, or the one line saying why it sees none
install-gpu: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,gpu]'
	$(PY) -c "from crfgan_tf.utils import runtime; runtime.configure(); import tensorflow as tf; \
		print('GPUs TensorFlow sees:', tf.config.list_physical_devices('GPU')); \
		print(runtime.unseen_gpu_warning() or '')"

# The main job on the embedded default data: phantom CTs -> TFRecords -> a short CPU
# training run (configs/demo.flags) -> SavedModel -> sample volumes with PNG previews ->
# FID/MMD on the labelled random-feature fallback (no MedicalNet weights offline) and a
# small 2AFC reader-study page.
# Rerunning resumes / does nothing once training has finished; the demo's study page is
# rebuilt (--overwrite: it has no collected answers to lose).
demo: $(STAMP)
	$(PY) -m crfgan_tf.train --flagfile=configs/demo.flags --model_dir=$(DEMO_DIR)/model
	$(PY) -m crfgan_tf.export --model_dir=$(DEMO_DIR)/model --export_dir=$(DEMO_DIR)/export
	$(PY) -m crfgan_tf.sample --saved_model=$(DEMO_DIR)/export --num_samples=2 --seed=0 \
		--output_dir=$(DEMO_DIR)/samples --format=nii.gz
	$(PY) -m tools.fid_mmd --real='$(DEMO_DIR)/records_64/*.tfrecord' --fake=$(DEMO_DIR)/export \
		--num_samples=8 --batch_size=4 --allow_random_features --cache_dir=$(DEMO_DIR)/fid_cache
	$(PY) -m tools.make_2afc --real='$(DEMO_DIR)/records_64/val-*.tfrecord' \
		--model_a=$(DEMO_DIR)/export --model_a_name=CRF-GAN --section1_pairs=4 \
		--section2_pairs=0 --volumes_per_source=2 --output_dir=$(DEMO_DIR)/study --overwrite
	@echo "demo: samples (NIfTI, HU, with PNG previews) in $(DEMO_DIR)/samples"
	@echo "demo: reader-study page $(DEMO_DIR)/study/readers/study.html (key in $(DEMO_DIR)/study/key)"
	@echo "demo: TensorBoard: $(VENV)/bin/tensorboard --logdir $(DEMO_DIR)/model"

# The paper's comparison in miniature (docs/study.md): CRF-GAN against HA-GAN on 24 phantom
# CTs at 128^3 (the smallest size both have), 1/8 width, two seeds each, 1,200 steps,
# measured at steps 600 and 1,200; under 90 minutes on 2 CPU cores. Rerunning continues it
# (every stage resumes) and does nothing once its report is written.
STUDY_DIR := study_run
study: $(STAMP)
	test -f $(STUDY_DIR)/phantoms/annotations.csv || $(PY) -m data_prep.make_phantoms \
		--output_dir=$(STUDY_DIR)/phantoms --num_scans=24 --in_plane=128 --num_slices=72 \
		--seed=100 --nodules
	$(PY) -m data_prep.convert --dataset=luna16 --input_dir=$(STUDY_DIR)/phantoms \
		--output_dir=$(STUDY_DIR)/records_128 --size=128 --num_shards=4 --val_fraction=0.25
	$(PY) -m tools.study --study_dir=$(STUDY_DIR)/study \
		--train_records='$(STUDY_DIR)/records_128/train-*.tfrecord' \
		--real_records='$(STUDY_DIR)/records_128/*.tfrecord' --arms=crfgan,hagan --seeds=0,1 \
		--train_steps=1200 --eval_every=600 --num_samples=16 --img_size=128 --width=0.125 \
		--train_flags='--latent_dim=128 --crf_weight_decay_steps=400 --log_every=50' \
		--allow_random_features --feature_side=64 --resamples=500 --permutations=1000
	@echo "study: report in $(STUDY_DIR)/study/report.html"

# Fast tier (what CI runs). `make test-all` adds the tests marked slow.
# TEST_WORKERS pytest processes (pytest-xdist), each test file on one of them; 1: in this
# process, one test after the other.
TEST_WORKERS ?= 2
PYTEST := TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist=loadfile)

test: $(STAMP)
	$(PYTEST) -m "not slow" tests

test-all: $(STAMP)
	$(PYTEST) tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(STUDY_DIR) .pytest_cache build *.egg-info
