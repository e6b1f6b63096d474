import warnings; warnings.filterwarnings("ignore")
from matgl_cdssl.apps import benchmark, BenchmarkSettings
s = BenchmarkSettings(lr_grid=(1e-4, 3e-4), backbone_lr_scales=(1.0,), tune_sizes=(100,))
r = benchmark(tasks=["perov_heat_ref"], arms=("scratch",), sizes=(50, 100, 250), seeds=(0,), settings=s,
              output_dir="/tmp/diag", progress=False)
print(r.runs[["n_train", "lr", "test_MAE", "best_val_MAE", "best_epoch", "epochs_run"]])
