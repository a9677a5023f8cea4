from resinkit_grpc.command import main

main()
