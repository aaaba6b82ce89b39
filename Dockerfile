# gnatsd.py in a container: the official Python image, the one file, and the
# default config of the original gnatsd image.  Nothing is pip-installed.
#
#   make docker
#   docker run -d --name nats-main -p 4222:4222 -p 6222:6222 -p 8222:8222 gnatsd-py
#   # a second server routed to the first (flags override the config file):
#   docker run -d --link nats-main gnatsd-py -c gnatsd.conf \
#       --routes=nats-route://ruser:T0pS3cr3t@nats-main:6222
FROM python:3.12-alpine

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY gnatsd.py /usr/local/bin/gnatsd.py
COPY conf/default.conf /etc/gnatsd/gnatsd.conf

# Its bytecode, cached at build time: the server starts by importing it
# (gnatsd.py restarts itself as a module import, same pid), so no start
# compiles the file (PYTHONDONTWRITEBYTECODE stops writes, not reads).
RUN python3 -m py_compile /usr/local/bin/gnatsd.py

# As in the original image, `-c gnatsd.conf` works from the working directory.
WORKDIR /etc/gnatsd

# Clients, routes (cluster), HTTP monitoring.
EXPOSE 4222 6222 8222

USER nobody

# As PID 1 the process gets no default signal actions; SIGINT always reaches
# Python's own handler, and is gnatsd's own shutdown signal.
STOPSIGNAL SIGINT

ENTRYPOINT ["python3", "/usr/local/bin/gnatsd.py"]
CMD ["-c", "/etc/gnatsd/gnatsd.conf"]
