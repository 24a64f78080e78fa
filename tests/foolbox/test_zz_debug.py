import torch, foolbox as fb
from tests.foolbox.test_perceptual_attacks import cifar, color_cnn, samples, STEPS  # noqa
from alma_plugin.foolbox import CIEDE2000ALMA
import alma_plugin.foolbox.alma as fa
from alma_plugin import alma

def test_debug(color_cnn, samples, monkeypatch):
    x, y = samples
    rec_fb, rec_al = [], []
    orig = fa.alma_solve
    def patched(model_fn, x_, classes, **kw):
        return orig(model_fn, x_, classes, callback=rec_fb.append, **kw)
    monkeypatch.setattr(fa, "alma_solve", patched)
    CIEDE2000ALMA(steps=200).run(fb.PyTorchModel(color_cnn, bounds=(0, 1)), x, y)
    alma(color_cnn, x, y, distance="ciede2000", steps=200, callback=rec_al.append)
    r = lambda v: v.raw if hasattr(v, "raw") else v
    for t, (a, b) in enumerate(zip(rec_fb, rec_al)):
        for f in ("distance", "success", "constraint"):
            if hasattr(a, f) and not torch.equal(r(getattr(a, f)), r(getattr(b, f))):
                print(t, f, r(getattr(a, f))[:2], r(getattr(b, f))[:2]); break
    print("\nfields", [k for k in vars(rec_fb[0])])
