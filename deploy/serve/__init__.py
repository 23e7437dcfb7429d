"""The evaluation endpoint (Ray Serve): ``deploy.serve.app:build_app``."""
