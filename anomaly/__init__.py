"""Unsupervised anomaly detection in chest X-rays with GANs.

Main entry points:
    anomaly.train.train_run, anomaly.train.TrainConfig   train a run: the opacity critic,
                                                         then a DCGAN and its encoder
    anomaly.families.dcgan.train.train_encoder           f-AnoGAN encoder for a trained GAN
    anomaly.score.Scorer                                 score images or arrays, any family
    anomaly.detector.Detector                            score, label, heat map per image
    anomaly.export.export_run                            ONNX / TorchScript export
    anomaly.exported.ExportedScorer                      score an export without torch
    anomaly.io.read_image                                read PNG/JPEG/BMP/TIFF/DICOM
    anomaly.preprocess.preprocess                        CLAHE, resize, scale to [-1, 1]
"""

__version__ = "0.1.0"
