"""The evaluation endpoint (Ray Serve): ``deploy.evaluate.serve.app:build_app``."""
