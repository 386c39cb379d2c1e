"""Build (and push) the RunPod pod image from deploy/runpod_cloud_training/Dockerfile."""

from podcycle.cli import guarded, settings, task


@task(help={
    "repo": "image repository, e.g. ghcr.io/<user>/chess-bot-runpod (default: IMAGE_REPO); "
            "lowercased",
    "push": "build with docker buildx and push both tags (default: PUSH_IMAGE, off)",
    "dry_run": "print the exact docker command and do nothing (default: off; Invoke's own "
               "`inv --dry image.build` echoes it the same way)",
})
@guarded
def build(c, repo=None, push=False, dry_run=False):
    """Build the pod image tagged <repo>:<git-short-sha> and <repo>:latest."""
    from podcycle import PROJECT_ROOT, image
    from podcycle.config import say
    from podcycle.errors import PodCycleError

    s = settings(c, image_repo=repo, push_image=True if push else None)
    name = image.normalise_repo(s.image_repo, s.source("image_repo"))
    if s.image_repo and name != s.image_repo.strip():
        say(f"image repository lowercased: {s.image_repo.strip()} → {name}")
    sha = image.git_short_sha()
    command = image.build_command(name, sha, bool(s.push_image))
    changed = image.changed_files()
    if changed:  # the tag would name a commit the image does not hold
        say(f"warning: {changed} file(s) of the checkout differ from HEAD ({sha}; git status "
            f"lists them): the image tagged :{sha} holds them too; commit them first for a "
            "tag that names what is in it")
    if dry_run:
        print(image.render(command))
        return
    if not c.config.run.dry:  # `inv --dry`: Invoke echoes the command and runs nothing
        image.check_docker()
        say(f"building {', '.join(image.tags(name, sha))}")
    with c.cd(str(PROJECT_ROOT)):
        result = c.run(image.render(command), echo=True, warn=True, pty=False)
    if result.failed:
        raise PodCycleError(f"docker build failed with exit code {result.exited}",
                            "read the build output above")
