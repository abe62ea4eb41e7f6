"""The gateway server and CLI: settings, model repository, scheduler, data plane, REST and gRPC."""
