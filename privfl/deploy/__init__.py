"""``privfl deploy``: a federation of institutions on Flower's SuperLink and SuperNodes.

- :mod:`privfl.deploy.create`: the deployment folder (``init``), one institution's
  folder (``institution``) and registering an institution's public keys at the
  coordinator (``add-owner``);
- :mod:`privfl.deploy.credentials`: SuperNode authentication keys and the app-signing
  key, in the formats Flower reads;
- :mod:`privfl.deploy.endorsement`: an institution's signature on privfl's bundle as it
  builds it, the only signature its SuperNode trusts;
- :mod:`privfl.deploy.registry`: the signed app, served to the SuperLink the way Flower
  Hub serves one (``app-registry``);
- :mod:`privfl.deploy.layout`: the file names; :mod:`privfl.deploy.scripts`: the start
  scripts and READMEs.

See docs/deployment.md.
"""

from privfl.deploy.errors import DeployError

__all__ = ["DeployError"]
