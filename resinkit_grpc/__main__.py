from resinkit_grpc.cli import main

main()
