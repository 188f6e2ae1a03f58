"""Evaluation reports (``deid eval ...``): what the classifiers and attacks do to held-out faces.

- :mod:`deid.eval.heldout`: ``deid eval classifier`` (held-out accuracy), ``attack`` (I-FGSM's
  targeted success vs eps) and ``dataset`` (one attack, everything measured; the input of
  ``deid report``);
- :mod:`deid.eval.robustness`: ``deid eval robustness`` (accuracy under untargeted attacks vs eps);
- :mod:`deid.eval.transfer`: ``deid eval transfer`` (do examples made on one classifier fool
  the others);
- :mod:`deid.eval.survival`: ``deid eval survival`` (does the de-identification survive H.264
  and JPEG);
- :mod:`deid.eval.privacy`: ``deid eval privacy`` (does an independent recognizer,
  :mod:`deid.judge`, still identify protected faces; its calibration per face size; a run
  judged after the fact);
- :mod:`deid.eval.common`: what they share: the seeded held-out sample, PSNR/SSIM, CSV tables;
- :mod:`deid.eval.cli`: the ``deid eval`` parsers (the reports load when a command runs).

The reports' figures are drawn by :mod:`deid.report.plots`. Nothing is imported here, so
``deid.eval.cli`` stays light.
"""
